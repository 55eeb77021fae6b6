"""Running experiments: cached pipeline stages (shared by `xpert demo`) and the benchmark matrix (`xpert bench`)."""
