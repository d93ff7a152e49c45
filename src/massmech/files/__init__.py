"""Files and run folders: atomic writes, run folders and their manifests. The ground floor: every layer may use it."""
