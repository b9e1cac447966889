//! A small flatbuffer writer: the object tree is laid out front to back, each table after its
//! vtable and before the objects it points to (flatbuffer offsets point forward), with every
//! scalar aligned to its size.

/// An object a table field or a vector can point to.
pub enum Obj {
    Table(Vec<(u16, Field)>),
    Str(String),
    Bytes(Vec<u8>),
    U16s(Vec<u16>),
    U32s(Vec<u32>),
    /// A vector of offsets to objects.
    Objs(Vec<Obj>),
}

/// A table field (by slot number).
pub enum Field {
    U8(u8),
    U16(u16),
    U32(u32),
    Obj(Obj),
}

impl Field {
    fn size(&self) -> usize {
        match self {
            Field::U8(_) => 1,
            Field::U16(_) => 2,
            Field::U32(_) | Field::Obj(_) => 4,
        }
    }
}

/// Serialize `root` (a table) as a finished flatbuffer.
pub fn finish(root: Obj) -> Vec<u8> {
    let mut buf = vec![0u8; 4];
    let pos = write(&mut buf, &root);
    put_u32(&mut buf, 0, pos as u32);
    buf
}

fn align(buf: &mut Vec<u8>, n: usize) {
    while !buf.len().is_multiple_of(n) {
        buf.push(0);
    }
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Write `o`; returns where an offset to it must point.
fn write(buf: &mut Vec<u8>, o: &Obj) -> usize {
    match o {
        Obj::Str(s) => {
            align(buf, 4);
            let p = buf.len();
            buf.extend((s.len() as u32).to_le_bytes());
            buf.extend(s.as_bytes());
            buf.push(0);
            p
        }
        Obj::Bytes(b) => {
            align(buf, 4);
            let p = buf.len();
            buf.extend((b.len() as u32).to_le_bytes());
            buf.extend(b);
            p
        }
        Obj::U16s(v) => {
            align(buf, 4);
            let p = buf.len();
            buf.extend((v.len() as u32).to_le_bytes());
            v.iter().for_each(|x| buf.extend(x.to_le_bytes()));
            p
        }
        Obj::U32s(v) => {
            align(buf, 4);
            let p = buf.len();
            buf.extend((v.len() as u32).to_le_bytes());
            v.iter().for_each(|x| buf.extend(x.to_le_bytes()));
            p
        }
        Obj::Objs(v) => {
            align(buf, 4);
            let p = buf.len();
            buf.extend((v.len() as u32).to_le_bytes());
            let slots: Vec<usize> = v
                .iter()
                .map(|_| {
                    buf.extend([0u8; 4]);
                    buf.len() - 4
                })
                .collect();
            for (slot, child) in slots.into_iter().zip(v) {
                let c = write(buf, child);
                put_u32(buf, slot, (c - slot) as u32);
            }
            p
        }
        Obj::Table(fields) => write_table(buf, fields),
    }
}

fn write_table(buf: &mut Vec<u8>, fields: &[(u16, Field)]) -> usize {
    // Inline layout: the vtable offset, then fields by size (4, 2, 1) so each is aligned.
    let mut order: Vec<usize> = (0..fields.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(fields[i].1.size()));
    let nslots = fields
        .iter()
        .map(|(s, _)| *s as usize + 1)
        .max()
        .unwrap_or(0);
    let mut offs = vec![0u16; nslots];
    let mut at = 4usize;
    for &i in &order {
        offs[fields[i].0 as usize] = at as u16;
        at += fields[i].1.size();
    }
    let inline = at;
    // vtable: its size, the table's inline size, one offset per slot.
    align(buf, 2);
    let vt_len = 4 + 2 * nslots;
    // The table must start 4-aligned right after the vtable.
    while !(buf.len() + vt_len).is_multiple_of(4) {
        buf.push(0);
    }
    let vt = buf.len();
    buf.extend((vt_len as u16).to_le_bytes());
    buf.extend((inline as u16).to_le_bytes());
    offs.iter().for_each(|o| buf.extend(o.to_le_bytes()));
    let table = buf.len();
    buf.extend(((table - vt) as i32).to_le_bytes());
    buf.resize(table + inline, 0);
    let mut children = Vec::new();
    for &i in &order {
        let (slot, f) = &fields[i];
        let p = table + offs[*slot as usize] as usize;
        match f {
            Field::U8(v) => buf[p] = *v,
            Field::U16(v) => buf[p..p + 2].copy_from_slice(&v.to_le_bytes()),
            Field::U32(v) => put_u32(buf, p, *v),
            Field::Obj(o) => children.push((p, o)),
        }
    }
    for (p, o) in children {
        let c = write(buf, o);
        put_u32(buf, p, (c - p) as u32);
    }
    table
}
