"""Configuration: the daemon's TOML config, the job file schema, job templates, training windows."""
