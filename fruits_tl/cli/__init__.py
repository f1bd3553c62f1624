"""absl binaries. The only package that defines flags; nothing imports it."""
