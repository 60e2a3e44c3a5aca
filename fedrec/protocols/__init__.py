"""Federated protocols: one shared party layer, then one folder per protocol and one module per role.

The party layer (every protocol stands on it; a new protocol adds only its messages, roles and math):

* :mod:`fedrec.protocols.party` — :class:`~fedrec.protocols.party.Peer` (``ask``: typed request/reply
  matched by sequence number), :func:`~fedrec.protocols.party.serve` (a ``{message type: handler}``
  table; :class:`~fedrec.protocols.party.Rejection` becomes a ``Rejected`` reply, bugs propagate),
  :func:`~fedrec.protocols.party.gather` (a round over many peers: ``(results, failures)``), config
  agreement;
* :mod:`fedrec.protocols.messages` — ``Hello``/``Ack``/``Done``/``Rejected`` and the checkpoint
  agreement ``Checkpoint``/``Checkpointed``/``Resume``/``ResumeAt``;
* :mod:`fedrec.protocols.checkpoint` — :class:`~fedrec.protocols.checkpoint.Checkpointer` (atomic,
  verified checkpoints of a party's explicit state; the newest common one is resumed) and the
  write-ahead :class:`~fedrec.protocols.checkpoint.PrivacyJournal` of DP releases.

Protocols:

* :mod:`fedrec.protocols.hetero_fm` — vertical federated FM (DESIGN §4.2): guest (labels, secret key)
  and host (user features).
"""
