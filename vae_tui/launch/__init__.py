"""Starting runs: checks (prepare.py), training here (run_here.py, plain.py), the worker process
(worker.py, spawn.py), the monitor that watches it (monitor.py), and signals (signals.py)."""
