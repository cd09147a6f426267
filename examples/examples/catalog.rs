//! A product catalog with CQRS: commands change event-sourced products, and a projection keeps
//! a read model shaped for search (words of the name and description, category facets, price
//! ranges). A second projection reads stock levels from a broker topic.
//!
//! The program shows that the read model is eventually consistent: right after a write, a
//! query may not see it yet. It then uses the position a command returns with
//! `ProjectionRunner::wait_for` to read its own writes, and finally rebuilds the search model
//! while writes and queries go on.
//!
//! Run with `cargo run --release --example catalog`. The database lives in
//! `target/catalog-db` and is recreated on every run.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use aqueduct::{Broker, Durability, Message, TopicConfig};
use aqueduct_patterns::{
    Aggregate, ApplyError, DomainEvent, EventStore, EventStoreConfig, ModelView, ModelWriter,
    Projection, ProjectionConfig, ProjectionRunner, Repository, SourceEvent, Upcasters,
};
use serde::{Deserialize, Serialize};

const PRODUCTS: u64 = 3_000;
const CATEGORIES: [&str; 5] = ["lighting", "kitchen", "garden", "office", "bath"];
const ADJECTIVES: [&str; 8] = [
    "brass", "oak", "linen", "ceramic", "steel", "walnut", "glass", "copper",
];
const NOUNS: [&str; 10] = [
    "lamp", "kettle", "planter", "desk", "mirror", "shelf", "tray", "stool", "vase", "clock",
];
const TIMEOUT: Duration = Duration::from_secs(30);

// The write side.

#[derive(Debug, Default, Serialize, Deserialize)]
struct Product {
    exists: bool,
    discontinued: bool,
}

#[derive(Clone, Debug)]
enum ProductCommand {
    Create {
        name: String,
        category: String,
        price_cents: u64,
        description: String,
    },
    ChangePrice {
        price_cents: u64,
    },
    Discontinue,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum ProductEvent {
    Created {
        name: String,
        category: String,
        price_cents: u64,
        description: String,
    },
    PriceChanged {
        price_cents: u64,
    },
    Discontinued,
}

impl DomainEvent for ProductEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ProductEvent::Created { .. } => "ProductCreated",
            ProductEvent::PriceChanged { .. } => "ProductPriceChanged",
            ProductEvent::Discontinued => "ProductDiscontinued",
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ProductError {
    #[error("the product already exists")]
    AlreadyExists,
    #[error("the product does not exist or is discontinued")]
    NotAvailable,
    #[error("a price must be above zero")]
    FreeProduct,
}

impl Aggregate for Product {
    const CATEGORY: &'static str = "product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;

    fn handle(&self, command: ProductCommand) -> Result<Vec<ProductEvent>, ProductError> {
        let available = self.exists && !self.discontinued;
        let event = match command {
            ProductCommand::Create { .. } if self.exists => {
                return Err(ProductError::AlreadyExists)
            }
            ProductCommand::Create { price_cents: 0, .. } => return Err(ProductError::FreeProduct),
            ProductCommand::Create {
                name,
                category,
                price_cents,
                description,
            } => ProductEvent::Created {
                name,
                category,
                price_cents,
                description,
            },
            _ if !available => return Err(ProductError::NotAvailable),
            ProductCommand::ChangePrice { price_cents: 0 } => {
                return Err(ProductError::FreeProduct)
            }
            ProductCommand::ChangePrice { price_cents } => {
                ProductEvent::PriceChanged { price_cents }
            }
            ProductCommand::Discontinue => ProductEvent::Discontinued,
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::Created { .. } => self.exists = true,
            ProductEvent::PriceChanged { .. } => {}
            ProductEvent::Discontinued => self.discontinued = true,
        }
    }
}

// The read side: a search model.

const PRODUCTS_TABLE: &str = "products";
const TERMS_TABLE: &str = "terms";
const PRICES_TABLE: &str = "prices";

/// A product as the search model stores it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ProductDoc {
    id: String,
    name: String,
    category: String,
    price_cents: u64,
    description: String,
}

/// Keeps `products` (id to document), `terms` (word, NUL, id) and `prices` (price, id).
struct SearchProjection {
    upcasters: Upcasters,
}

impl Projection for SearchProjection {
    fn tables(&self) -> &[&str] {
        &[PRODUCTS_TABLE, TERMS_TABLE, PRICES_TABLE]
    }

    fn apply(&self, event: &SourceEvent, model: &ModelWriter<'_>) -> Result<(), ApplyError> {
        let SourceEvent::Stored(recorded) = event else {
            return Ok(());
        };
        let Some(id) = recorded.stream.strip_prefix("product-") else {
            return Ok(());
        };
        let products = model.table(PRODUCTS_TABLE)?;
        let stored = match products.get(id)? {
            Some(bytes) => {
                Some(postcard::from_bytes::<ProductDoc>(&bytes).map_err(ApplyError::failed)?)
            }
            None => None,
        };
        if let Some(doc) = &stored {
            unindex(model, doc)?;
        }
        let updated = match (event.decode::<ProductEvent>(&self.upcasters)?, stored) {
            (
                ProductEvent::Created {
                    name,
                    category,
                    price_cents,
                    description,
                },
                _,
            ) => Some(ProductDoc {
                id: id.to_string(),
                name,
                category,
                price_cents,
                description,
            }),
            (ProductEvent::PriceChanged { price_cents }, Some(doc)) => {
                Some(ProductDoc { price_cents, ..doc })
            }
            (ProductEvent::PriceChanged { .. } | ProductEvent::Discontinued, _) => None,
        };
        match updated {
            Some(doc) => {
                index(model, &doc)?;
                let bytes = postcard::to_stdvec(&doc).map_err(ApplyError::failed)?;
                products.insert(id, bytes)?;
            }
            None => {
                products.remove(id)?;
            }
        }
        Ok(())
    }
}

fn index(model: &ModelWriter<'_>, doc: &ProductDoc) -> Result<(), ApplyError> {
    let terms = model.table(TERMS_TABLE)?;
    for word in words(&doc.name).union(&words(&doc.description)) {
        terms.insert(term_key(word, &doc.id), &[])?;
    }
    model
        .table(PRICES_TABLE)?
        .insert(price_key(doc.price_cents, &doc.id), &[])?;
    Ok(())
}

fn unindex(model: &ModelWriter<'_>, doc: &ProductDoc) -> Result<(), ApplyError> {
    let terms = model.table(TERMS_TABLE)?;
    for word in words(&doc.name).union(&words(&doc.description)) {
        terms.remove(term_key(word, &doc.id))?;
    }
    model
        .table(PRICES_TABLE)?
        .remove(price_key(doc.price_cents, &doc.id))?;
    Ok(())
}

fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| word.len() >= 2)
        .map(str::to_lowercase)
        .collect()
}

fn term_key(word: &str, id: &str) -> Vec<u8> {
    [word.as_bytes(), b"\0", id.as_bytes()].concat()
}

fn price_key(price_cents: u64, id: &str) -> Vec<u8> {
    [&price_cents.to_be_bytes()[..], id.as_bytes()].concat()
}

/// A query: words that must all match a word prefix, an optional category and a price range.
struct Query<'a> {
    text: &'a str,
    category: Option<&'a str>,
    price_cents: RangeInclusive<u64>,
}

/// Matching products sorted by price, and how many matches each category has before the
/// category filter (the facet counts a shop shows next to the results).
struct Results {
    hits: Vec<ProductDoc>,
    facets: BTreeMap<String, usize>,
}

fn search(view: &ModelView, query: &Query<'_>) -> Result<Results, Box<dyn std::error::Error>> {
    let products = view.table(PRODUCTS_TABLE)?;
    let mut candidates: Option<BTreeSet<String>> = None;
    for word in words(query.text) {
        let mut ids = BTreeSet::new();
        for entry in view.table(TERMS_TABLE)?.scan_prefix(word.as_bytes()) {
            let (key, _) = entry?;
            if let Some(split) = key.iter().position(|&byte| byte == 0) {
                ids.insert(String::from_utf8_lossy(&key[split + 1..]).into_owned());
            }
        }
        candidates = Some(match candidates {
            Some(previous) => previous.intersection(&ids).cloned().collect(),
            None => ids,
        });
    }
    let candidates = match candidates {
        Some(ids) => ids,
        None => price_range_ids(view, &query.price_cents)?,
    };

    let mut facets = BTreeMap::new();
    let mut hits = Vec::new();
    for id in candidates {
        let Some(bytes) = products.get(&id)? else {
            continue;
        };
        let doc: ProductDoc = postcard::from_bytes(&bytes)?;
        if !query.price_cents.contains(&doc.price_cents) {
            continue;
        }
        *facets.entry(doc.category.clone()).or_insert(0) += 1;
        if query.category.is_none() || query.category == Some(doc.category.as_str()) {
            hits.push(doc);
        }
    }
    hits.sort_by_key(|doc| (doc.price_cents, doc.id.clone()));
    Ok(Results { hits, facets })
}

fn price_range_ids(
    view: &ModelView,
    range: &RangeInclusive<u64>,
) -> Result<BTreeSet<String>, Box<dyn std::error::Error>> {
    let start = range.start().to_be_bytes().to_vec();
    let end = range.end().saturating_add(1).to_be_bytes().to_vec();
    let mut ids = BTreeSet::new();
    for entry in view.table(PRICES_TABLE)?.range(start..end) {
        let (key, _) = entry?;
        ids.insert(String::from_utf8_lossy(&key[8..]).into_owned());
    }
    Ok(ids)
}

// The read side: stock levels from a topic.

const STOCK_TOPIC: &str = "warehouse.stock";
const STOCK_TABLE: &str = "stock";

/// A stock count that the warehouse system publishes.
#[derive(Debug, Serialize, Deserialize)]
struct StockLevel {
    product: String,
    units: u32,
}

struct StockProjection;

impl Projection for StockProjection {
    fn tables(&self) -> &[&str] {
        &[STOCK_TABLE]
    }

    fn apply(&self, event: &SourceEvent, model: &ModelWriter<'_>) -> Result<(), ApplyError> {
        let level: StockLevel = event.decode_payload()?;
        model
            .table(STOCK_TABLE)?
            .insert(level.product.as_bytes(), &level.units.to_be_bytes())?;
        Ok(())
    }
}

fn stock_of(view: &ModelView, id: &str) -> Result<Option<u32>, Box<dyn std::error::Error>> {
    let Some(bytes) = view.table(STOCK_TABLE)?.get(id)? else {
        return Ok(None);
    };
    let raw: [u8; 4] = bytes.as_ref().try_into()?;
    Ok(Some(u32::from_be_bytes(raw)))
}

// The program.

struct App {
    broker: Broker,
    products: Repository<Product>,
    search: ProjectionRunner,
    stock: ProjectionRunner,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let app = open(Path::new("target/catalog-db"))?;

    let last = load_products(&app)?;
    show_eventual_consistency(&app, last)?;
    show_read_your_writes(&app)?;
    show_search(&app)?;
    show_stock(&app)?;
    show_rebuild(&app)?;

    app.search.stop()?;
    app.stock.stop()?;
    Ok(())
}

fn open(path: &Path) -> Result<App, Box<dyn std::error::Error>> {
    if path.exists() {
        std::fs::remove_dir_all(path)?;
    }
    let broker = Broker::open(path)?;

    let durability = Durability::Buffered {
        max_delay: Duration::from_millis(10),
    };
    let store = EventStore::open_with(
        &broker,
        "catalog",
        EventStoreConfig::default().durability(durability),
    )?;
    let products = Repository::<Product>::new(store.clone())?.retry_on_conflict(3);

    let search_projection = SearchProjection {
        upcasters: Upcasters::new(),
    };
    let config = ProjectionConfig::default().batch_size(64);
    let search = ProjectionRunner::from_store(&store, "catalog-search", search_projection, config)?;

    broker.create_topic(STOCK_TOPIC, TopicConfig::default().partitions(2))?;
    let stock = ProjectionRunner::from_topic(
        &broker,
        STOCK_TOPIC,
        "catalog-stock",
        StockProjection,
        ProjectionConfig::default(),
    )?;

    println!(
        "opened catalog database at {} (events buffered up to 10 ms before they reach disk)",
        path.display()
    );
    Ok(App {
        broker,
        products,
        search,
        stock,
    })
}

/// Creates `PRODUCTS` products and returns the position of the last event.
fn load_products(app: &App) -> Result<u64, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut last = 0;
    for number in 0..PRODUCTS {
        let adjective = ADJECTIVES[(number % 8) as usize];
        let noun = NOUNS[(number / 8 % 10) as usize];
        let category = CATEGORIES[(number / 80 % 5) as usize];
        let create = ProductCommand::Create {
            name: format!("{adjective} {noun} no. {number}"),
            category: category.to_string(),
            price_cents: 500 + (number * 7_919) % 19_500,
            description: format!("A {adjective} {noun} for the {category}."),
        };
        let executed = app.products.execute(&format!("p{number}"), create)?;
        last = executed.position.unwrap_or(last);
    }
    println!(
        "created {PRODUCTS} products in {:.2?} on the command side",
        started.elapsed()
    );
    Ok(last)
}

fn show_eventual_consistency(app: &App, last: u64) -> Result<(), Box<dyn std::error::Error>> {
    let visible = app.search.read_model().view().table(PRODUCTS_TABLE)?.len();
    println!(
        "right after the last write the search model holds {visible} of {PRODUCTS} products \
         (eventual consistency: the projection applies events in the background)"
    );
    let started = Instant::now();
    let reached = app.search.wait_for(last, TIMEOUT)?;
    let visible = app.search.read_model().view().table(PRODUCTS_TABLE)?.len();
    println!(
        "wait_for(position {last}) returned {reached} after {:.2?}; the model now holds {visible}",
        started.elapsed()
    );
    Ok(())
}

fn show_read_your_writes(app: &App) -> Result<(), Box<dyn std::error::Error>> {
    let create = ProductCommand::Create {
        name: "Aurora espresso grinder".to_string(),
        category: "kitchen".to_string(),
        price_cents: 8_900,
        description: "Burr grinder with 40 settings.".to_string(),
    };
    let executed = app.products.execute("aurora", create)?;
    let query = Query {
        text: "espresso grind",
        category: None,
        price_cents: 0..=u64::MAX,
    };
    let before = search(&app.search.read_model().view(), &query)?.hits.len();
    let position = executed.position.ok_or("the command stored no event")?;
    let reached = app.search.wait_for(position, TIMEOUT)?;
    let after = search(&app.search.read_model().view(), &query)?.hits;
    println!();
    println!("created \"Aurora espresso grinder\" at position {position}");
    println!("  query \"espresso grind\" without waiting: {before} hit(s)");
    println!(
        "  after wait_for(position {position}) = {reached}: {} hit(s), {}",
        after.len(),
        after.first().map_or("none".to_string(), describe)
    );
    Ok(())
}

fn show_search(app: &App) -> Result<(), Box<dyn std::error::Error>> {
    let query = Query {
        text: "lamp",
        category: None,
        price_cents: 2_000..=8_000,
    };
    let view = app.search.read_model().view();
    let results = search(&view, &query)?;
    println!();
    println!(
        "query \"lamp\", 20.00 to 80.00: {} hits, facets {:?}",
        results.hits.len(),
        results.facets
    );
    for doc in results.hits.iter().take(3) {
        println!("  {}", describe(doc));
    }

    let cheapest = results.hits.first().ok_or("no lamp in range")?.clone();
    let second = results
        .hits
        .get(1)
        .ok_or("fewer than two lamps in range")?
        .clone();
    let raise = ProductCommand::ChangePrice { price_cents: 9_500 };
    app.products.execute(&cheapest.id, raise)?;
    let discontinued = app
        .products
        .execute(&second.id, ProductCommand::Discontinue)?;
    let again = app
        .products
        .execute(&second.id, ProductCommand::Discontinue);
    let position = discontinued.position.ok_or("the command stored no event")?;
    app.search.wait_for(position, TIMEOUT)?;

    let narrowed = Query {
        category: Some("lighting"),
        ..query
    };
    let results = search(&app.search.read_model().view(), &narrowed)?;
    println!(
        "raised {:?} to 95.00 and discontinued {:?} (discontinuing it again: {})",
        cheapest.name,
        second.name,
        again.map_or_else(|error| error.to_string(), |_| "accepted".to_string()),
    );
    println!(
        "query \"lamp\" in lighting, 20.00 to 80.00 now: {} hits, facets {:?}",
        results.hits.len(),
        results.facets
    );
    Ok(())
}

fn show_stock(app: &App) -> Result<(), Box<dyn std::error::Error>> {
    let view = app.search.read_model().view();
    let hits = search(
        &view,
        &Query {
            text: "copper kettle",
            category: None,
            price_cents: 0..=u64::MAX,
        },
    )?
    .hits;
    let mut receipts = Vec::new();
    for (index, doc) in hits.iter().take(4).enumerate() {
        let level = StockLevel {
            product: doc.id.clone(),
            units: 3 * index as u32,
        };
        let message = Message::encode(&level)?.key(doc.id.clone());
        receipts.push(app.broker.publish(STOCK_TOPIC, message)?);
    }
    for receipt in &receipts {
        app.stock.wait_for(*receipt, TIMEOUT)?;
    }
    let stock = app.stock.read_model().view();
    println!();
    println!("stock levels published to topic {STOCK_TOPIC:?} and projected from it:");
    for doc in hits.iter().take(4) {
        let units = stock_of(&stock, &doc.id)?.map_or("unknown".to_string(), |u| u.to_string());
        println!("  {} - {units} in stock", describe(doc));
    }
    Ok(())
}

fn show_rebuild(app: &App) -> Result<(), Box<dyn std::error::Error>> {
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let writer = {
        let products = app.products.clone();
        let stop = Arc::clone(&stop);
        thread::spawn(move || -> Result<u64, String> {
            let mut last = 0;
            let mut number = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("p{}", number % PRODUCTS);
                let change = ProductCommand::ChangePrice {
                    price_cents: 1_000 + number,
                };
                if let Ok(executed) = products.execute(&id, change) {
                    last = executed.position.unwrap_or(last);
                }
                number += 1;
            }
            Ok(last)
        })
    };
    let reader = {
        let model = app.search.read_model();
        let stop = Arc::clone(&stop);
        let answered = Arc::clone(&answered);
        thread::spawn(move || {
            let query = Query {
                text: "oak",
                category: None,
                price_cents: 0..=u64::MAX,
            };
            while !stop.load(Ordering::SeqCst) {
                if search(&model.view(), &query).is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let report = app.search.rebuild()?;
    stop.store(true, Ordering::SeqCst);
    let last = writer.join().map_err(|_| "writer panicked")??;
    reader.join().map_err(|_| "reader panicked")?;
    app.search.wait_for(last, TIMEOUT)?;
    let products = app.search.read_model().view().table(PRODUCTS_TABLE)?.len();
    println!();
    println!(
        "rebuilt the search model into generation {} from {} events in {:.2?} while prices \
         kept changing; {} queries were answered meanwhile; it holds {products} products",
        report.generation,
        report.events,
        report.elapsed,
        answered.load(Ordering::Relaxed)
    );
    Ok(())
}

fn describe(doc: &ProductDoc) -> String {
    format!(
        "{} ({}, {}.{:02})",
        doc.name,
        doc.category,
        doc.price_cents / 100,
        doc.price_cents % 100
    )
}
