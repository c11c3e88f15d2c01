//! A site as `inventory show` prints it: its cluster on one line, then a
//! table of its machines with their role, MAC, IP and BMC.

use std::fmt;

use super::Site;

/// `inventory show`'s text of a site.
pub struct Inventory<'a>(pub &'a Site);

impl fmt::Display for Inventory<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let site = self.0;
        let cluster = &site.cluster;
        writeln!(
            f,
            "site {} ({}), cluster {} at {}:{}, {} control planes, capacity {}%",
            site.name,
            site.datacenter,
            cluster.name,
            cluster.api_endpoint.host,
            cluster.api_endpoint.port,
            cluster.control_plane_count,
            site.capacity
        )?;
        let header = ("MACHINE", "ROLE", "MAC", "IP");
        writeln!(
            f,
            "  {:<16} {:<14} {:<18} {:<16} BMC",
            header.0, header.1, header.2, header.3
        )?;
        for m in &site.machines {
            writeln!(
                f,
                "  {:<16} {:<14} {:<18} {:<16} {} {}",
                m.name.as_str(),
                m.role.as_str(),
                m.mac.to_string(),
                m.ip.to_string(),
                m.bmc.driver,
                m.bmc.address
            )?;
        }
        Ok(())
    }
}
