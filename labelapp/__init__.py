"""The Django app of the RLHF studio: labels, queues, pages. Never imports the ML stack."""
