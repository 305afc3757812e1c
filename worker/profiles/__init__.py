"""Assistant profiles: what answers a conversation (model, instructions, tools, knowledge),
declared by the operator in a file and fixed for the life of the process."""
