"""The jobs, one module each: train, extract, evaluate (and predict), export, bench, audit,
compare, synthetic. A job never imports another job; the binaries in `fruits_tl.cli` run them."""
