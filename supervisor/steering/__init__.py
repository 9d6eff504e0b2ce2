"""Connection steering, run by the supervisor process: the weight policy, the load tracker, the classic BPF program
attached to the reuseport group, the accept-queue view and the arrival watch. Pure parts take no I/O."""
