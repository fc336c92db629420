"""How an accepted update lives in Redis: the task messages' wire format (`wire`), the
gateway's accept and its script (`accept`), and queueing an update again (`requeue`)."""
