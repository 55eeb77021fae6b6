"""Running experiments: the matrix (`xpert bench run`; the demo is its preset `configs/bench/demo.yaml`), run as
cached stages of the pipeline (`xpert_pl.pipeline`) over a `RunLayout`."""
