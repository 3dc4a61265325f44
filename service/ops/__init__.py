"""What the on-call engineer reads: doctor, metrics, alert rules and the dashboard."""
