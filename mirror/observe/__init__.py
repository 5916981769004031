"""What the mirror reports: Prometheus metrics, pull statistics, the audit log, the status page's content."""
