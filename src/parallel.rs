//! CPU-bound fan-out over all cores with scoped threads, keeping the
//! input's order, so parallel work stays deterministic. (Network fan-out,
//! with limits per site and per BMC, is a different job model.)

/// Applies `f` to every item on all available cores and returns the
/// results in input order; the first error, in input order, wins. `panicked`
/// makes the error returned if a worker thread panics.
pub fn map_in_order<T, R, E, F>(items: &[T], panicked: fn() -> E, f: F) -> Result<Vec<R>, E>
where
    T: Sync,
    R: Send,
    E: Send,
    F: Fn(&T) -> Result<R, E> + Sync,
{
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = items.len().div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Result<Vec<R>, E>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for worker in workers {
            out.extend(worker.join().unwrap_or_else(|_| Err(panicked()))?);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_reports_the_first_error() {
        let items: Vec<u32> = (0..1000).collect();
        let doubled = map_in_order(&items, || "panic", |x| Ok::<_, &str>(x * 2)).unwrap();
        assert_eq!(doubled, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        let err = map_in_order(
            &items,
            || 0,
            |x| if *x % 300 == 299 { Err(*x) } else { Ok(*x) },
        );
        assert_eq!(err, Err(299));
        let none: Vec<u32> = map_in_order(&[], || "panic", |x: &u32| Ok(*x)).unwrap();
        assert!(none.is_empty());
    }
}
