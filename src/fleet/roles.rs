//! Which machine holds which role, per generation. The inventory names each
//! machine's role; a blue-green replace (`replace site S --blue-green`)
//! builds generation N+1 on the site's spare machines while N still
//! serves, then makes N's machines the spares. From then on the state's
//! `sites/<S>` record (`roles`) overrides the inventory's roles for that
//! site, and while a blue-green build runs, `next_roles` holds the roles
//! of the generation being built (the boot server renders those).

use std::collections::BTreeMap;

use anyhow::bail;

use crate::fleet::{Fleet, Role, Site};
use crate::state::{self, SiteRecord, StateStore};

/// `fleet` with the roles its state records (a blue-green replace moves
/// a site's roles onto other machines than the inventory names); the
/// inventory's roles when nothing is recorded or the state cannot be read
/// (said as a warning: operations that need the state fail on it anyway).
pub async fn recorded(fleet: Fleet) -> Fleet {
    if matches!(&fleet.state.backend, crate::fleet::StateBackend::Local { path } if !fleet.root.join(path).exists())
    {
        return fleet;
    }
    let read = async {
        let (store, _) = state::open(&fleet)?;
        effective(&fleet, store.as_ref(), false).await
    };
    match read.await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(
                "reading the recorded roles from the state: {e:#}; using the inventory's roles"
            );
            fleet
        }
    }
}

/// Gives `site`'s machines the roles of `roles` (machines not listed keep
/// theirs).
pub fn apply(site: &mut Site, roles: &BTreeMap<String, Role>) {
    for m in &mut site.machines {
        if let Some(r) = roles.get(m.name.as_str()) {
            m.role = *r;
        }
    }
}

/// Which roles a record puts in effect: the generation being built
/// (`building`, as the boot server needs) or the current one.
pub fn in_effect(record: &SiteRecord, building: bool) -> &BTreeMap<String, Role> {
    if building && !record.next_roles.is_empty() {
        &record.next_roles
    } else {
        &record.roles
    }
}

/// `fleet` with the roles the state records for each site's current
/// generation (`building`: of the generation a blue-green build is
/// making, where one runs).
pub async fn effective(
    fleet: &Fleet,
    store: &dyn StateStore,
    building: bool,
) -> anyhow::Result<Fleet> {
    let mut fleet = fleet.clone();
    for site in &mut fleet.sites {
        if let Some((record, _)) =
            state::get_json::<SiteRecord>(store, &crate::state::Key::site(&site.name)).await?
        {
            apply(site, in_effect(&record, building));
        }
    }
    Ok(fleet)
}

/// The roles to record for the generation `site` (a view with its roles
/// applied) now runs: none while the inventory's roles were never
/// overridden, else every machine's.
pub fn overrides(
    site: &Site,
    roles: &BTreeMap<String, Role>,
    next_roles: &BTreeMap<String, Role>,
) -> BTreeMap<String, Role> {
    if roles.is_empty() && next_roles.is_empty() {
        return BTreeMap::new();
    }
    all(site)
}

/// Every machine of `site` and its role.
pub fn all(site: &Site) -> BTreeMap<String, Role> {
    site.machines
        .iter()
        .map(|m| (m.name.to_string(), m.role))
        .collect()
}

/// The roles of a blue-green build: the serving machines (control planes,
/// then workers, in inventory order) hand their roles to as many spares,
/// and become spares themselves. Refused, saying how many are needed, when
/// the site has too few spares.
pub fn blue_green(site: &Site) -> anyhow::Result<BTreeMap<String, Role>> {
    let serving: Vec<_> = [Role::ControlPlane, Role::Worker]
        .iter()
        .flat_map(|r| site.machines.iter().filter(move |m| m.role == *r))
        .collect();
    let spares: Vec<_> = site
        .machines
        .iter()
        .filter(|m| m.role == Role::Spare)
        .collect();
    if spares.len() < serving.len() {
        let cps = serving
            .iter()
            .filter(|m| m.role == Role::ControlPlane)
            .count();
        bail!(
            "site {} has {} spare machine(s); a blue-green replace builds the new generation on \
             spares and needs {} ({cps} control plane(s), {} worker(s))",
            site.name,
            spares.len(),
            serving.len(),
            serving.len() - cps
        );
    }
    let mut next = all(site);
    for (old, new) in serving.iter().zip(&spares) {
        next.insert(new.name.to_string(), old.role);
        next.insert(old.name.to_string(), Role::Spare);
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fra() -> Site {
        let fleet = crate::fleet::load(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        fleet.site("fra").unwrap().clone()
    }

    #[test]
    fn too_few_spares_are_refused_with_the_count_needed() {
        let e = blue_green(&fra()).unwrap_err().to_string();
        assert!(
            e.contains("site fra has 1 spare machine(s)")
                && e.contains("needs 5 (3 control plane(s), 2 worker(s))"),
            "{e}"
        );
    }

    #[test]
    fn serving_machines_and_spares_swap_roles_in_order() {
        let mut site = fra();
        // Keep fra-cp-01 and the spare only.
        site.machines
            .retain(|m| m.name.as_str() == "fra-cp-01" || m.role == Role::Spare);
        let spare = site
            .machines
            .iter()
            .find(|m| m.role == Role::Spare)
            .unwrap()
            .name
            .to_string();
        let next = blue_green(&site).unwrap();
        assert_eq!(next["fra-cp-01"], Role::Spare);
        assert_eq!(next[&spare], Role::ControlPlane);
        let mut view = site.clone();
        apply(&mut view, &next);
        assert_eq!(
            view.machines
                .iter()
                .filter(|m| m.role == Role::ControlPlane)
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            [spare.as_str()]
        );
        // Recorded: nothing while never overridden, every machine after.
        assert!(overrides(&site, &BTreeMap::new(), &BTreeMap::new()).is_empty());
        assert_eq!(overrides(&view, &BTreeMap::new(), &next), next);
        // And back again: the old control plane is the spare now.
        let back = blue_green(&view).unwrap();
        assert_eq!(back["fra-cp-01"], Role::ControlPlane);
        assert_eq!(back[&spare], Role::Spare);
    }

    #[test]
    fn the_boot_server_sees_the_generation_being_built() {
        let record = SiteRecord {
            roles: BTreeMap::from([("a".to_string(), Role::Spare)]),
            next_roles: BTreeMap::from([("a".to_string(), Role::Worker)]),
            ..SiteRecord::default()
        };
        assert_eq!(in_effect(&record, true)["a"], Role::Worker);
        assert_eq!(in_effect(&record, false)["a"], Role::Spare);
        let done = SiteRecord {
            next_roles: BTreeMap::new(),
            ..record
        };
        assert_eq!(in_effect(&done, true)["a"], Role::Spare);
    }
}
