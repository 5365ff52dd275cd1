"""Speed benchmarks of charjax (run as `python -m benchmarks.<name>`)."""
