"""The one sequential engine that serves every method."""
