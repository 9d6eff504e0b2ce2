"""Everything that crosses a process boundary in wsup: messages, endpoints, control RPC, stats and the bus."""
