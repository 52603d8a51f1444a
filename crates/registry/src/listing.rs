//! Tag and repository listings, paginated by key: a page costs a page.

use crate::{cache, NameRange, Registry, RegistryError, Result};
use berth_proto::{ErrorCode, RepositoryName};
use std::sync::Arc;

/// The most entries one catalog page returns (registry:2's `catalog.maxentries`).
const MAX_CATALOG_PAGE: u32 = 1000;
/// The most tags one page returns when the client asks for a page size.
const MAX_TAG_PAGE: u32 = 10_000;

/// A page of names, and whether more follow it.
#[derive(Debug, Clone)]
pub struct Page {
    pub names: Vec<String>,
    pub more: bool,
}

impl Page {
    pub fn empty() -> Page {
        Page { names: Vec::new(), more: false }
    }

    /// Fetching one extra row tells whether another page exists without a count query.
    fn from_fetch(mut names: Vec<String>, limit: u32) -> Page {
        let more = names.len() > limit as usize;
        names.truncate(limit as usize);
        Page { names, more }
    }
}

impl Registry {
    /// Tags after `last`; without `n`, every tag (as registry:2 does).
    pub async fn tags(&self, repo: &RepositoryName, last: Option<&str>, n: Option<u32>) -> Result<Arc<Page>> {
        let id = self.repository_id(repo).await?;
        let limit = n.map_or(u32::MAX - 1, |n| n.min(MAX_TAG_PAGE));
        let last = last.unwrap_or("");
        let (c, name) = (&*self.caches, repo.as_str());
        let key = cache::key(name, &format!("{last}\0{limit}"));
        if let Some(page) = c.tag_pages.get(c, name, &key) {
            return Ok(page);
        }
        let ticket = c.ticket(name);
        let page = if limit == 0 {
            Page::empty()
        } else {
            Page::from_fetch(self.meta.tags(id, last, limit + 1).await?, limit)
        };
        let page = Arc::new(page);
        c.tag_pages.fill(ticket, key, page.clone());
        Ok(page)
    }

    async fn repository_id(&self, repo: &RepositoryName) -> Result<i64> {
        let (c, name) = (&*self.caches, repo.as_str());
        if let Some(id) = c.repositories.get(c, name, name) {
            return Ok(id);
        }
        let ticket = c.ticket(name);
        let Some(id) = self.meta.repository_id(name).await? else {
            return Err(RegistryError::new(ErrorCode::NameUnknown, format!("repository {repo} is not known")));
        };
        c.repositories.fill(ticket, name.to_owned(), id);
        Ok(id)
    }

    /// A page of repository names; `within` limits it to the ranges a caller may see.
    pub async fn catalog(&self, last: Option<&str>, n: Option<u32>, within: Option<&[NameRange]>) -> Result<Page> {
        let limit = n.unwrap_or(MAX_CATALOG_PAGE).min(MAX_CATALOG_PAGE);
        if limit == 0 {
            return Ok(Page { names: Vec::new(), more: false });
        }
        let last = last.unwrap_or("");
        let names = match within {
            None => self.meta.catalog(last, limit + 1).await?,
            Some(ranges) => self.meta.catalog_within(ranges, last, limit + 1).await?,
        };
        Ok(Page::from_fetch(names, limit))
    }
}
