"""Everything that runs the `modal` CLI, always under a hard deadline."""
