"""The operator console (issue 13): server-rendered pages over Kafka and the processes' health
and metrics endpoints — ``stafet console``; the application is :mod:`stafet.console.app`."""
