"""Delivery of replies on the ticket's originating channel (email, in-app, signed webhook) through the outbox.

`outbox.drain_outbox` sends what the decision transactions queued; `review` is the reviewer's side of the
loop; `lifecycle.close_quiet_tickets` closes resolved tickets nobody wrote back to.
"""
