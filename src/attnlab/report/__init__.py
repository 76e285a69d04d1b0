"""Reports: leaderboards, markdown and plots."""
