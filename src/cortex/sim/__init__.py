"""The fleet simulator: a request trace replayed through the gateway's real fleet owner,
router and evictor on virtual time, over modelled neurons, under each placement policy
(``cortex sim``; the story and figures: ``docs/placement.md``)."""
