"""The gate's flows as explicit state machines (presence now; identify, enrol and delete to come)."""
