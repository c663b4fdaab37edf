"""mail2ticket: departmental mailboxes in, tracked tickets out."""
