"""The reviewer's side of the loop: approve, edit or reject a flagged or escalated reply."""
