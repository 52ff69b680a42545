"""Every byte format and shared schema, pure: subjects and keys, commands, acks, heartbeats,
config schema, plugin frames and record types, version ranges, signing."""
