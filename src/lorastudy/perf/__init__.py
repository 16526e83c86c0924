"""Speed and memory: training throughput (`bench`), where a step's time goes (`bench_step`), where a finished
sweep's time went (`bench_sweep`), a profile's cost before it runs (`estimate`), the paper's memory model
(`memory_model`) and the pre-flight check of a machine (`check`). Each measurement is written as a JSON record
under `benchmarks/`."""
