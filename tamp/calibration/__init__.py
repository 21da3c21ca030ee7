"""The --calib data: specs, loaders and the batches they give."""

# bumped when the batches drawn from a spec change (rendering, sampling, synthetic data): keys of artifacts
# pruned on calibration data cover it
VERSION = 1
