//! What the kernel did with SMC sockets: smc_diag and the SMC generic netlink family.
