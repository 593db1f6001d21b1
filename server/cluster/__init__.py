"""Several group-server nodes over one PostgreSQL database: leases (``database``), the threads that run the rounds
and carry notifications (``link``), and the node's wiring to its call (``node``). The decisions are pure, in
``ptt.cluster`` and ``ptt.cluster_messages``."""
