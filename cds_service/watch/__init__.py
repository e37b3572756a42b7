"""Background NMS surveillance: ``nms-cds watch``.

Every pass (default every 5 minutes) :mod:`.census` finds the patients with a dopamine-antagonist or
dopaminergic record in effect on the configured FHIR server (code-filtered searches: the cost grows with
the patients on those drugs, not with the census), :mod:`.runner` evaluates each one it can lease with the
same engine as ``patient-view``, and every new or worsened warning or critical finding becomes a worklist
entry (:mod:`cds_service.store.worklist`), delivered by :mod:`.deliver` (a webhook, and a FHIR ``Task`` when
write-back is configured).
"""
