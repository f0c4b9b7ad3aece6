"""The paper's experiments: grids of training runs (grids), running them (runner), reading run
directories into tables (aggregate) and reports with plots (report)."""
