"""Shadow-write replay: capture source changes through a logical slot (pgoutput) and apply them to the target."""
