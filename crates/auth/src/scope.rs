//! What a caller may do: actions on repositories, in the grammar of Docker's token
//! scopes (`repository:team/app:pull,push`).

use std::fmt;

/// A set of actions on one repository. Each level includes the ones below it where
/// that is how registries behave: pushing needs pulling (to check what exists), and
/// deleting is granted with `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const PULL: Actions = Actions(1);
    pub const PUSH: Actions = Actions(2);
    pub const DELETE: Actions = Actions(4);
    pub const ALL: Actions = Actions(7);

    pub fn contains(self, other: Actions) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    pub fn intersect(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The actions of a scope: `pull`, `push`, `delete` and `*` (all), comma-separated.
    /// Unknown action names grant nothing (a client may ask for more than exists).
    pub fn parse_list(s: &str) -> Actions {
        s.split(',').fold(Actions::NONE, |acc, a| {
            acc.union(match a.trim() {
                "pull" => Actions::PULL,
                "push" => Actions::PUSH,
                "delete" => Actions::DELETE,
                "*" => Actions::ALL,
                _ => Actions::NONE,
            })
        })
    }

    /// The access a level name grants: `none`, `pull`, `push` (with pull) or `delete`
    /// (everything).
    pub fn from_level(level: &str) -> Option<Actions> {
        Some(match level {
            "none" => Actions::NONE,
            "pull" => Actions::PULL,
            "push" => Actions::PULL.union(Actions::PUSH),
            "delete" => Actions::ALL,
            _ => return None,
        })
    }

    pub fn names(self) -> Vec<&'static str> {
        [(Actions::PULL, "pull"), (Actions::PUSH, "push"), (Actions::DELETE, "delete")]
            .into_iter()
            .filter(|(a, _)| self.contains(*a))
            .map(|(_, n)| n)
            .collect()
    }
}

/// What a scope is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    Repository(String),
    /// `registry:catalog:*`: listing repositories.
    Catalog,
}

/// One requested or granted scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub resource: Resource,
    pub actions: Actions,
}

impl Scope {
    pub fn repository(name: &str, actions: Actions) -> Scope {
        Scope { resource: Resource::Repository(name.to_owned()), actions }
    }

    /// Parses `type:name:actions`. The name may itself contain `:` (a registry host with
    /// a port, in some clients), so the type ends at the first colon and the actions
    /// start after the last.
    pub fn parse(s: &str) -> Option<Scope> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        let resource = match (kind, name) {
            ("repository", name) if !name.is_empty() => Resource::Repository(name.to_owned()),
            ("registry", "catalog") => Resource::Catalog,
            _ => return None,
        };
        Some(Scope { resource, actions: Actions::parse_list(actions) })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.resource {
            Resource::Repository(name) => write!(f, "repository:{name}:{}", self.actions.names().join(",")),
            Resource::Catalog => f.write_str("registry:catalog:*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip() {
        let s = Scope::parse("repository:team/app:pull,push").unwrap();
        assert_eq!(s, Scope::repository("team/app", Actions::PULL.union(Actions::PUSH)));
        assert_eq!(s.to_string(), "repository:team/app:pull,push");
        assert_eq!(Scope::parse("repository:a:*").unwrap().actions, Actions::ALL);
        assert_eq!(Scope::parse("registry:catalog:*").unwrap().resource, Resource::Catalog);
        assert_eq!(
            Scope::parse("repository:localhost:5000/a:pull").unwrap().resource,
            Resource::Repository("localhost:5000/a".into())
        );
        assert_eq!(Scope::parse("repository:a:fly").unwrap().actions, Actions::NONE);
        for bad in ["", "repository", "repository::pull", "registry:other:*", "other:a:pull"] {
            assert_eq!(Scope::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn levels() {
        assert_eq!(Actions::from_level("push"), Some(Actions::PULL.union(Actions::PUSH)));
        assert!(Actions::from_level("delete").unwrap().contains(Actions::DELETE));
        assert_eq!(Actions::from_level("admin"), None);
    }
}
