"""Services: the rules and transactions behind every API route, task and command."""
