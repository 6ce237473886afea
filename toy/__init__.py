"""The miniature world StyleKit trains itself: procedural images, probes that read them, and a small
model family in the published layouts (see README, "The miniature world"). Nothing here is imported by
the nodes; the demo, the effect tests and ``make toy`` use it."""
