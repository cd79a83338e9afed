"""Starting runs: checks (prepare.py), training here (run_here.py, with views/plain.py), the worker
process (worker.py, spawn.py), the monitor that watches it (monitor.py), signals (signals.py), and
torchrun: --nproc (torchrun.py), one rank of its world (ranks.py), restarts and nodes (elastic.py)."""
