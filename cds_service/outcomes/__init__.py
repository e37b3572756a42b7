"""What happened after a card: the outcomes behind ``nms-cds report --outcomes``.

:mod:`.detect` finds, in one patient's record after a card, the outcomes a pharmacy committee counts (NMS
coded, dantrolene or bromocriptine started, the dopamine antagonist stopped, a transfer to intensive care);
:mod:`.records` reads the records from an export directory or a FHIR server; :mod:`.summary` joins them to
the card audit and computes firing rate, positive predictive value and time to action, without any patient
identifier in its output.
"""
