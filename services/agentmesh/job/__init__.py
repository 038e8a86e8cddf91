"""Job service: durable long-running agent work, executed by Dramatiq workers."""
