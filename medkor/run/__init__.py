"""Files of a run: writing them so that a crash or a full disk never leaves half a file."""
