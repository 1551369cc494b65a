"""One way to Kafka for every process: client configuration and principals, the topic plan and
the ACL plan, the durable producer, the readers, dead letters, and the local broker."""
