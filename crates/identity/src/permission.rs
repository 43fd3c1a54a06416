//! What a caller may do: named permissions, the set each role holds, and
//! [`authorize`], the one function that decides.
//!
//! A permission is `resource:action`. Roles are fixed sets of them; an API
//! key narrows its owner's set further. Ownership is decided from the
//! stored owner of a resource that the caller passes in, never from ids in
//! a request.

use store::{CustomerId, Role, UserId};

macro_rules! permissions {
    ($($variant:ident = $name:literal, $doc:literal;)*) => {
        /// One thing a caller may do.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Permission {
            $(#[doc = $doc] $variant,)*
        }

        impl Permission {
            /// Every permission, in declaration order.
            pub const ALL: &'static [Permission] = &[$(Permission::$variant,)*];

            /// The `resource:action` name used in API keys and the docs.
            pub fn name(self) -> &'static str {
                match self {
                    $(Permission::$variant => $name,)*
                }
            }

            /// Reads a permission name; `None` for anything unknown.
            pub fn from_name(name: &str) -> Option<Permission> {
                match name {
                    $($name => Some(Permission::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

permissions! {
    SitesCreate = "sites:create", "Create sites for one's own customer.";
    SitesRead = "sites:read", "See sites and their settings.";
    SitesUpdate = "sites:update", "Change a site's settings.";
    SitesDelete = "sites:delete", "Delete a site with its releases.";
    ReleasesRead = "releases:read", "List a site's releases.";
    ReleasesDeploy = "releases:deploy", "Upload a release or roll back.";
    LogsRead = "logs:read", "Read an app's captured logs.";
    AppsRestart = "apps:restart", "Restart a site's app.";
    MetricsRead = "metrics:read", "See a site's status and metrics.";
    SecretsRead = "secrets:read", "List a site's secret names.";
    SecretsWrite = "secrets:write", "Set or remove a site's secrets.";
    AuditRead = "audit:read", "Read audit events.";
    ApiKeysManage = "apikeys:manage", "Create, list and revoke one's API keys.";
    UsersManage = "users:manage", "Create, change and delete any user.";
    KeysManage = "keys:manage", "Rotate the token signing keys.";
    ShieldManage = "shield:manage", "Manage bans and emergency mode.";
    SystemMetrics = "system:metrics", "Scrape the platform's /metrics.";
    SystemConfig = "system:config", "Change platform-wide settings.";
    IncidentRead = "incident:read", "See incidents, their timelines and actions.";
    IncidentManage = "incident:manage", "Open, contain, lift and resolve incidents.";
}

impl Permission {
    /// True iff the permission acts on one site (and so makes sense on an
    /// API key limited to sites).
    pub fn is_site_scoped(self) -> bool {
        use Permission::*;
        matches!(
            self,
            SitesRead
                | SitesUpdate
                | SitesDelete
                | ReleasesRead
                | ReleasesDeploy
                | LogsRead
                | AppsRestart
                | MetricsRead
                | SecretsRead
                | SecretsWrite
        )
    }
}

/// A set of permissions, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PermissionSet(u64);

impl PermissionSet {
    pub const EMPTY: PermissionSet = PermissionSet(0);

    pub fn of(permissions: &[Permission]) -> PermissionSet {
        permissions
            .iter()
            .fold(PermissionSet::EMPTY, |set, p| set.with(*p))
    }

    pub fn with(self, p: Permission) -> PermissionSet {
        PermissionSet(self.0 | 1 << p as u8)
    }

    pub fn contains(self, p: Permission) -> bool {
        self.0 & (1 << p as u8) != 0
    }

    /// True iff every permission of `other` is in `self`.
    pub fn covers(self, other: PermissionSet) -> bool {
        other.0 & !self.0 == 0
    }

    pub fn intersect(self, other: PermissionSet) -> PermissionSet {
        PermissionSet(self.0 & other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .iter()
            .copied()
            .filter(move |p| self.contains(*p))
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Permission::name).collect()
    }
}

/// The permissions a role grants.
pub fn role_permissions(role: Role) -> PermissionSet {
    use Permission::*;
    match role {
        Role::Admin => PermissionSet::of(Permission::ALL),
        Role::Developer => PermissionSet::of(&[
            SitesCreate,
            SitesRead,
            SitesUpdate,
            SitesDelete,
            ReleasesRead,
            ReleasesDeploy,
            LogsRead,
            AppsRestart,
            MetricsRead,
            SecretsRead,
            SecretsWrite,
            AuditRead,
            ApiKeysManage,
        ]),
        Role::Viewer => PermissionSet::of(&[SitesRead, ReleasesRead, MetricsRead]),
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// An access JWT from a token login.
    Bearer,
    /// A browser session cookie; state changes need a CSRF token.
    Cookie,
    /// An API key.
    ApiKey,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: UserId,
    pub email: String,
    pub role: Role,
    /// `None` for platform admins only.
    pub customer: Option<CustomerId>,
    /// The role's permissions, narrowed by an API key's scope.
    pub permissions: PermissionSet,
    /// The login session; `None` for API keys.
    pub session: Option<String>,
    /// The API key's id, when the caller used one.
    pub api_key: Option<String>,
    /// Sites an API key is limited to; `None` for no limit.
    pub sites: Option<Vec<String>>,
    pub method: AuthMethod,
    /// True iff the user has a confirmed TOTP second factor.
    pub second_factor: bool,
}

/// A resource a permission is checked against, described by its stored
/// owner.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// A site and everything under it (releases, logs, secrets, metrics).
    Site {
        domain: &'a str,
        customer: Option<CustomerId>,
    },
    /// Something owned by a customer as a whole (its audit events, say).
    Customer(Option<CustomerId>),
    /// Something owned by one user (an API key, a session).
    OwnedBy(UserId),
}

/// Why [`authorize`] said no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    #[error("the caller lacks {0}")]
    MissingPermission(&'static str),
    #[error("the resource belongs to another customer")]
    OtherCustomer,
    #[error("the resource belongs to another user")]
    OtherUser,
    #[error("the API key is limited to other sites")]
    OutsideKeyScope,
}

/// Decides whether `principal` may use `permission`, on `resource` when
/// one is given. With `None` it answers whether the caller holds the
/// permission at all (the route-level check); handlers call it again with
/// the stored resource once they have loaded it.
pub fn authorize(
    principal: &Principal,
    permission: Permission,
    resource: Option<Resource<'_>>,
) -> Result<(), Denied> {
    if !principal.permissions.contains(permission) {
        return Err(Denied::MissingPermission(permission.name()));
    }
    let Some(resource) = resource else {
        return Ok(());
    };
    if let (Resource::Site { domain, .. }, Some(sites)) = (resource, &principal.sites) {
        if !sites.iter().any(|s| s == domain) {
            return Err(Denied::OutsideKeyScope);
        }
    }
    if principal.role == Role::Admin {
        return Ok(());
    }
    match resource {
        Resource::Site { customer, .. } | Resource::Customer(customer) => {
            // A resource without a customer belongs to the platform: only
            // admins reach it.
            match (customer, principal.customer) {
                (Some(owner), Some(mine)) if owner == mine => Ok(()),
                _ => Err(Denied::OtherCustomer),
            }
        }
        Resource::OwnedBy(user) if user == principal.user_id => Ok(()),
        Resource::OwnedBy(_) => Err(Denied::OtherUser),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, customer: Option<i64>) -> Principal {
        Principal {
            user_id: UserId(7),
            email: "u@example.com".into(),
            role,
            customer: customer.map(CustomerId),
            permissions: role_permissions(role),
            session: None,
            api_key: None,
            sites: None,
            method: AuthMethod::Bearer,
            second_factor: false,
        }
    }

    fn site(customer: Option<i64>) -> Option<Resource<'static>> {
        Some(Resource::Site {
            domain: "a.example.com",
            customer: customer.map(CustomerId),
        })
    }

    #[test]
    fn names_round_trip_and_are_resource_colon_action() {
        for p in Permission::ALL {
            assert_eq!(Permission::from_name(p.name()), Some(*p));
            let (resource, action) = p.name().split_once(':').expect("colon");
            assert!(!resource.is_empty() && !action.is_empty());
        }
        assert_eq!(Permission::from_name("sites:everything"), None);
        assert!(Permission::ALL.len() < 64);
    }

    #[test]
    fn a_developer_reaches_only_its_own_customers_sites() {
        let dev = principal(Role::Developer, Some(1));
        assert_eq!(
            authorize(&dev, Permission::SitesUpdate, site(Some(1))),
            Ok(())
        );
        assert_eq!(
            authorize(&dev, Permission::SitesUpdate, site(Some(2))),
            Err(Denied::OtherCustomer)
        );
        assert_eq!(
            authorize(&dev, Permission::SitesRead, site(None)),
            Err(Denied::OtherCustomer)
        );
        assert_eq!(
            authorize(&dev, Permission::UsersManage, None),
            Err(Denied::MissingPermission("users:manage"))
        );
    }

    #[test]
    fn a_viewer_reads_but_never_writes() {
        let viewer = principal(Role::Viewer, Some(1));
        assert_eq!(
            authorize(&viewer, Permission::SitesRead, site(Some(1))),
            Ok(())
        );
        for write in [
            Permission::SitesCreate,
            Permission::SitesUpdate,
            Permission::SitesDelete,
            Permission::ReleasesDeploy,
            Permission::AppsRestart,
            Permission::SecretsWrite,
            Permission::ApiKeysManage,
        ] {
            assert!(
                authorize(&viewer, write, site(Some(1))).is_err(),
                "{write:?}"
            );
        }
    }

    #[test]
    fn an_admin_reaches_every_customer_but_a_key_scope_still_limits_it() {
        let mut admin = principal(Role::Admin, None);
        assert_eq!(
            authorize(&admin, Permission::SitesDelete, site(Some(9))),
            Ok(())
        );
        assert_eq!(
            authorize(&admin, Permission::SitesDelete, site(None)),
            Ok(())
        );
        admin.sites = Some(vec!["b.example.com".into()]);
        assert_eq!(
            authorize(&admin, Permission::SitesDelete, site(Some(9))),
            Err(Denied::OutsideKeyScope)
        );
    }

    #[test]
    fn owned_resources_belong_to_their_user() {
        let dev = principal(Role::Developer, Some(1));
        let mine = Some(Resource::OwnedBy(UserId(7)));
        let theirs = Some(Resource::OwnedBy(UserId(8)));
        assert_eq!(authorize(&dev, Permission::ApiKeysManage, mine), Ok(()));
        assert_eq!(
            authorize(&dev, Permission::ApiKeysManage, theirs),
            Err(Denied::OtherUser)
        );
    }

    #[test]
    fn set_operations_hold() {
        let dev = role_permissions(Role::Developer);
        let viewer = role_permissions(Role::Viewer);
        assert!(dev.covers(viewer));
        assert!(!viewer.covers(dev));
        assert_eq!(dev.intersect(viewer), viewer);
        assert!(role_permissions(Role::Admin).covers(dev));
    }
}
