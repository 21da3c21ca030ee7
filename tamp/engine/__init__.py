"""The one sequential engine that serves every method."""

# bumped when what the engine computes changes (capture, statistics, the block loop): every pruned artifact's
# key covers it
VERSION = 1
