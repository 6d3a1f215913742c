"""The ticket domain: the work queue, status lifecycle, reads, traces and customer accounts."""
