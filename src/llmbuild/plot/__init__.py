"""Plots: the seeds' p90 TTFT/TPOT picture with SLO thresholds, throughput, loss curves."""
