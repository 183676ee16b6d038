"""Pipeline stages: each a plain function from an artifact on disk to the next one."""
