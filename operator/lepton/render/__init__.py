"""Pure rendering: (resource, settings) -> child manifests as dicts. No I/O."""
